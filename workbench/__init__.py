"""sgopd-workbench: reproduce, extend and stress-test Sign-Gated On-Policy Distillation.

Importing the package is cheap: heavy dependencies (torch, transformers, mlflow, verl,
vllm) are imported by the modules and CLI verbs that need them.
"""

__version__ = "0.1.0"
