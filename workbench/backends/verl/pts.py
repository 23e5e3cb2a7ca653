"""Phased teacher sampling on verl's v1 trainer (GPU-only glue; the decisions are in ``pts_plan``).

Per step while PTS is active (``trainer.v1.trainer_mode=sgopd_sync``):

1. ``PTSTrainer._submit_batch_to_rollout`` flags the first ``max(1, round(rho * P))``
   prompts of the step (``__pts__``).
2. ``PTSAgentLoopWorker`` answers each flagged prompt once with the *teacher*: it runs the
   same agent loop as the student's rollouts, with the teacher's server client in place of
   the student's (verl's teacher vLLM servers generate when asked for more than one token:
   ``max_tokens`` is the student's response length), scores it with the same verifier,
   scores it with the teacher (for a uniform batch schema), and stores it in TransferQueue
   as ``{uid}_pts_0`` beside the prompt's student rollouts, with ``pts_anchor = 1``. The
   prompt's group is published only after its anchor is stored (session 0 awaits it), so
   verl's replay buffer always samples the group whole.
3. ``PTSTrainer._compute_advantage`` replaces verl's GRPO advantage by
   ``workbench.algo.grpo_advantage`` over the student rows only (anchor rows would otherwise
   join their prompt's group) and writes the whole-batch ``sgopd_weight`` and
   ``sgopd_row_scale`` (``adapter.driver_fields``).
4. ``PTSTrainer._update_actor`` makes the whole batch, anchors included, one PPO
   mini-batch (one optimizer step): the ``sgopd`` loss adds the anchor NLL with weight
   ``alpha(step)`` in the same step, at importance ratio 1 (fresh ``old_log_probs``).
5. ``PTSTrainer._compute_metrics`` hides the anchor rows from verl's rollout metrics
   (``pts_plan.metric_tags``: the score is the student's accuracy) and, as every
   ``WorkbenchTrainer``, adds the canonical metric names (``metrics.add_canonical``).

verl's padding rows (added to make the batch divisible) copy the batch's first row,
``pts_anchor`` included; every decision goes through ``pts_plan.row_roles``, which makes
them neither student nor anchor rows (no group, no metric, zero loss weight).

Nothing here has run on a GPU yet (docs/verl.md); the CPU tests cover ``pts_plan`` and the
loss's anchor rows.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging

import hydra
import ray
import torch
import transfer_queue as tq
from tensordict import NonTensorStack, TensorDict
from verl.experimental.agent_loop.agent_loop import DictConfigWrap, ToolListWrap, _agent_loop_registry
from verl.trainer.ppo.metric_utils import reduce_metrics
from verl.trainer.ppo.v1.agent_loop_tq import AgentLoopManagerTQ, AgentLoopWorkerTQ
from verl.trainer.ppo.v1.trainer_base import register_trainer
from verl.workers.utils.padding import no_padding_2_padding, response_to_nested

from workbench.backends.verl import pts_plan
from workbench.backends.verl.trainer import WorkbenchTrainer

log = logging.getLogger(__name__)

PTS_FLAG = "__pts__"
ANCHOR = "pts_anchor"
ANCHOR_SESSION = "pts"
TRAINER_MODE = "sgopd_sync"


# -- rollout side: the teacher answers flagged prompts -------------------------------------


@ray.remote
class PTSAgentLoopWorker(AgentLoopWorkerTQ.__ray_actor_class__):  # type: ignore[name-defined]
    """``AgentLoopWorkerTQ`` that also stores one teacher response for each flagged prompt."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._anchors: dict[str, asyncio.Task] = {}

    async def _run_prompt(self, prompt: dict, sampling_params: dict, trajectory: dict, trace: bool = False) -> None:
        flagged = bool(prompt.pop(PTS_FLAG, False))
        if flagged and not trajectory["validate"] and self.distillation_enabled:
            self._anchors[prompt["uid"]] = asyncio.create_task(
                self._run_teacher_anchor(dict(prompt), dict(sampling_params), trajectory)
            )
        await super()._run_prompt(prompt, sampling_params, trajectory, trace)

    async def _run_agent_loop(self, sampling_params, trajectory, *, agent_name, trace=True, **kwargs):
        try:
            return await super()._run_agent_loop(sampling_params, trajectory, agent_name=agent_name, trace=trace, **kwargs)
        finally:
            if kwargs.get("session_id") == 0:  # the group's status waits for its anchor
                task = self._anchors.pop(kwargs.get("uid"), None)
                if task is not None:
                    await task

    async def _agent_loop_postprocess(self, output, validate, **kwargs):
        kwargs.setdefault(ANCHOR, torch.tensor(0, dtype=torch.int64))
        return await super()._agent_loop_postprocess(output, validate, **kwargs)

    async def _run_teacher_anchor(self, prompt: dict, sampling_params: dict, trajectory: dict) -> None:
        teacher = next(iter(self.teacher_server_manager.teacher_client.values()))
        agent_name = prompt.pop("agent_name", None) or self.config.actor_rollout_ref.rollout.agent.default_agent_loop
        loop = hydra.utils.instantiate(
            config=_agent_loop_registry[agent_name],
            trainer_config=DictConfigWrap(config=self.config),
            server_manager=teacher,
            tokenizer=self.tokenizer,
            processor=self.processor,
            hf_model_type=self.hf_model_type,
            dataset_cls=self.dataset_cls,
            data_config=DictConfigWrap(self.config.data),
            tools=ToolListWrap(self.tools),
        )
        # The teacher servers are configured to score (response_length 1); ask for a full response.
        sampling_params["max_tokens"] = int(self.config.actor_rollout_ref.rollout.response_length)
        output = await loop.run(sampling_params, **prompt)
        if output.response_logprobs is None:  # keep the schema of the student rows
            output.response_logprobs = [0.0] * len(output.response_ids)
        kwargs = {**prompt, "session_id": ANCHOR_SESSION, ANCHOR: torch.tensor(1, dtype=torch.int64)}
        await self._agent_loop_postprocess(output, False, **kwargs)


class PTSAgentLoopManager(AgentLoopManagerTQ):
    """``AgentLoopManagerTQ`` with ``PTSAgentLoopWorker`` workers
    (``actor_rollout_ref.rollout.agent.agent_loop_manager_class``)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.agent_loop_workers_class = PTSAgentLoopWorker


# -- trainer side ------------------------------------------------------------------------------


@register_trainer(TRAINER_MODE)
class PTSTrainer(WorkbenchTrainer):
    """The workbench's sync trainer plus PTS's prompt flags, docs/algorithm.md's GRPO groups, whole-batch
    SG-OPD fields, one optimizer step per training step, and student-only rollout metrics."""

    @property
    def _loss_cfg(self) -> dict:
        from omegaconf import OmegaConf

        return OmegaConf.to_container(self.config.distillation.distillation_loss, resolve=True)

    def _plan(self) -> pts_plan.StepPlan:
        cfg = self._loss_cfg
        pts = {k.removeprefix("pts_"): v for k, v in cfg.items() if k.startswith("pts_")}
        return pts_plan.step_plan(self.global_steps, self.total_training_steps, self.config.data.train_batch_size, pts)

    def _submit_batch_to_rollout(self, batch: TensorDict) -> int:
        flags = pts_plan.prompt_flags(len(batch), self._plan())
        batch[PTS_FLAG] = NonTensorStack(*flags)
        return super()._submit_batch_to_rollout(batch)

    def _get_required_batch_multiple(self, dp_size: int) -> int:
        return dp_size  # the whole batch is one mini-batch (see _update_actor)

    def _compute_advantage(self, batch, metrics: dict):
        batch = super()._compute_advantage(batch, metrics)
        fields = ["uid", "prompts", "responses", "response_mask", "rm_scores", "old_log_probs", "teacher_logprobs", ANCHOR]
        if self.use_reference_policy:
            fields.append("ref_log_prob")
        if "actor/entropy" in metrics:  # _compute_old_log_prob stored the per-token entropy
            fields.append("entropy")
        data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=fields)
        nested_mask = data["response_mask"]
        width = int(nested_mask.offsets().diff().max())
        mask = nested_mask.to_padded_tensor(0)[:, :width].to(torch.bool)

        def dense(key):
            return data[key].to_padded_tensor(0.0)[:, :width].float()

        lp_teacher = no_padding_2_padding(data["teacher_logprobs"], data).squeeze(-1).float()
        rewards = data["rm_scores"].to_padded_tensor(0.0).sum(-1).float()
        fields_out, step_metrics = pts_plan.step_fields(
            rewards=rewards,
            uids=[str(u) for u in data["uid"]],
            anchor=data[ANCHOR].reshape(-1),
            mask=mask,
            lp_old=dense("old_log_probs"),
            lp_teacher=lp_teacher,
            lp_ref=dense("ref_log_prob") if self.use_reference_policy else None,
            loss_cfg=self._loss_cfg,
            plan=self._plan(),
            padding=pts_plan.padding_rows(batch.tags),
            entropy=dense("entropy") if "entropy" in fields else None,
            loss_agg_mode=self.config.actor_rollout_ref.actor.loss_agg_mode,
        )
        out = TensorDict(
            {
                "advantages": response_to_nested(fields_out["advantages"], nested_mask),
                "sgopd_weight": response_to_nested(fields_out["sgopd_weight"], nested_mask),
                "sgopd_row_scale": fields_out["sgopd_row_scale"],
            },
            batch_size=len(batch),
        )
        tq.kv_batch_put(keys=batch.keys, partition_id=batch.partition_id, fields=out)
        metrics.update(step_metrics)
        return batch

    def _update_actor(self, batch, metrics: dict):
        # One mini-batch = the whole batch (student rollouts + anchors): one optimizer step,
        # so every importance ratio is 1 at the update and the anchor term is exactly its NLL.
        actor = self.config.actor_rollout_ref.actor
        n = len(batch)
        batch.extra_info.update(
            {
                "calculate_entropy": actor.calculate_entropy or actor.entropy_coeff != 0.0,
                "distillation_use_topk": False,
                "distillation_only": False,
                "global_batch_size": n,
                "mini_batch_size": n,
                "epochs": 1,
                "seed": actor.data_loader_seed,
                "dataloader_kwargs": {"shuffle": False},
                "temperature": self.config.actor_rollout_ref.rollout.temperature,
            }
        )
        output = self.actor_rollout_wg.update_actor(batch)
        output = {f"actor/{k}": v for k, v in output["metrics"].items()}
        output["perf/mfu/actor"] = output.pop("actor/mfu")
        metrics.update(reduce_metrics(output))
        return batch

    def _compute_metrics(self, batch, metrics, timing_raw, global_steps, epoch):
        # verl's rollout metrics skip rows tagged is_padding: tag the anchors too (a copy of
        # the batch's tags: verl's step bookkeeping keeps the real ones).
        anchor = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=[ANCHOR])[ANCHOR]
        student_view = dataclasses.replace(batch, tags=pts_plan.metric_tags(batch.tags, anchor.reshape(-1)))
        super()._compute_metrics(student_view, metrics, timing_raw, global_steps, epoch)


__all__ = ["TRAINER_MODE", "PTSAgentLoopManager", "PTSAgentLoopWorker", "PTSTrainer"]
