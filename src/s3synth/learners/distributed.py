"""Data-parallel training for the Hugging Face learner (torch.distributed, DistributedDataParallel).

Three ways in, one training loop (`HFLearner.fit`):

* **Launched from outside**: `torchrun --nproc_per_node N ...` or `accelerate launch ...` start N
  processes with WORLD_SIZE/RANK/LOCAL_RANK/MASTER_ADDR/MASTER_PORT set; the first `fit` joins that
  group (gloo on CPU, nccl on CUDA, one GPU per process by LOCAL_RANK).
* **`workers=N` (learner option)**: the learner launches the processes itself and the caller (the S3
  loop, `s3synth train`) does not know: with Ray Train's `TorchTrainer` when Ray is running in this
  process (`--executor ray`) or `launcher=ray`, else with `torch.multiprocessing` (`launcher=spawn`, one
  machine). Rank 0's best weights and history come back into the calling learner.
* **Inside a group someone else set up** (Ray Train, your own script): used as it is.

The recipe does not change with the number of processes: `batch_size` is the global batch. Every rank
builds the same length-grouped batches from the same seed and takes a strided share of each
(`split_batch`); its loss is weighted so that DDP's gradient average equals the single-process gradient
of the whole batch. The learning rate, the schedule and the number of steps are those of a
single-process run, so the best epoch and the model agree with it up to floating-point rounding (and
dropout masks, which each rank draws for its own share). Evaluation is sharded across ranks and the
predictions gathered, so every rank computes the same metrics; rank 0's epoch row is broadcast anyway,
so the best-epoch choice and early stopping are identical on every rank. Only rank 0 writes.
"""

from __future__ import annotations

import atexit
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from ..errors import S3Error

LAUNCHERS = ("auto", "spawn", "ray")
RAY_STORAGE_ENV = "S3SYNTH_RAY_STORAGE"   # Ray Train's storage_path (a shared folder or s3://... on a cluster)


# ---------------------------------------------------------------- pure helpers (unit tested)

def split_batch(idx: Sequence[int], rank: int, world: int) -> tuple[list[int], float]:
    """This rank's strided share of a global batch and the weight of its mean loss.

    DDP averages gradients over `world` ranks; weighting each rank's mean loss by
    `len(share) * world / len(idx)` makes that average the gradient of the whole batch's mean loss.
    A rank whose share is empty (a batch smaller than the world) runs the batch's first example with
    weight 0, so that every rank still takes part in the gradient all-reduce.

    Example: split_batch([7, 3, 5], 1, 2) -> ([3], 0.666...); split_batch([7], 1, 2) -> ([7], 0.0)
    """
    share = list(idx[rank::world])
    if not share:
        return list(idx[:1]), 0.0
    return share, len(share) * world / len(idx)


def merge_shares(shares: Sequence[Sequence], n: int) -> list:
    """The inverse of a strided split: item i of the whole came from shares[i % world][i // world].

    Example: merge_shares([["a", "c"], ["b"]], 3) -> ["a", "b", "c"]
    """
    world = len(shares)
    out = [None] * n
    for r, part in enumerate(shares):
        out[r::world] = list(part)
    return out


def env_world() -> tuple[int, int, int]:
    """(world size, rank, local rank) from the variables torchrun / accelerate launch set; (1, 0, 0) without."""
    def num(name, default):
        raw = os.environ.get(name, "")
        try:
            return int(raw) if raw else default
        except ValueError:
            raise S3Error(f"environment variable {name}={raw!r} is not a whole number (set by torchrun?)") from None
    return num("WORLD_SIZE", 1), num("RANK", 0), num("LOCAL_RANK", 0)


def check_options(workers, launcher) -> None:
    """The learner options of this module: a one-line error for a bad value."""
    if not isinstance(workers, int) or workers < 1:
        raise S3Error(f"learner setting workers={workers!r}: must be a whole number >= 1 "
                      "(processes that train data-parallel; 1 = this process)")
    if launcher not in LAUNCHERS:
        raise S3Error(f"learner setting launcher={launcher!r}: must be one of {', '.join(LAUNCHERS)}")


def is_main_process() -> bool:
    """False only on a data-parallel rank other than 0 (those train, but write nothing)."""
    try:
        import torch.distributed as dist
    except ImportError:
        return True
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return env_world()[1] == 0


# ---------------------------------------------------------------- this process's place in a group

class DataParallel:
    """This process's rank in a torch.distributed group of more than one process."""

    def __init__(self, rank: int, world: int, device: str):
        self.rank, self.world, self.device = rank, world, device

    @classmethod
    def current(cls, device: str) -> DataParallel | None:
        """The group this process belongs to, joined now if torchrun/accelerate launched it; None when
        the process trains alone."""
        import torch
        import torch.distributed as dist

        if not dist.is_available():
            return None
        if dist.is_initialized():
            world = dist.get_world_size()
            return cls(dist.get_rank(), world, device) if world > 1 else None
        world, rank, local = env_world()
        if world <= 1:
            return None
        missing = [v for v in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(v)]
        if missing:
            raise S3Error(f"WORLD_SIZE={world} is set but {' and '.join(missing)} not: start data-parallel "
                          "training with torchrun or accelerate launch (or use --learner-option workers=N)")
        if device == "cuda":
            if local >= torch.cuda.device_count():
                raise S3Error(f"LOCAL_RANK={local} but this machine has {torch.cuda.device_count()} GPU(s): "
                              "start at most one process per GPU (torchrun --nproc_per_node)")
            torch.cuda.set_device(local)
        dist.init_process_group("nccl" if device == "cuda" else "gloo", init_method="env://",
                                rank=rank, world_size=world)
        atexit.register(_destroy_group)
        if rank != 0:
            from ..progress import set_quiet
            set_quiet(True)
        return cls(rank, world, device)

    def wrap(self, model):
        """The model under DistributedDataParallel (its parameters are broadcast from rank 0 here)."""
        import torch
        from torch.nn.parallel import DistributedDataParallel

        ids = [torch.cuda.current_device()] if self.device == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    def split(self, idx: Sequence[int]) -> tuple[list[int], float]:
        return split_batch(idx, self.rank, self.world)

    def sum(self, value: float) -> float:
        """`value` summed over the ranks."""
        import torch
        import torch.distributed as dist

        t = torch.tensor([value], dtype=torch.float64, device="cuda" if self.device == "cuda" else "cpu")
        dist.all_reduce(t)
        return float(t.item())

    def broadcast(self, obj):
        """Rank 0's `obj` on every rank."""
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def evaluate(self, learner, examples: Sequence) -> dict:
        """`learner.evaluate(examples)` with the predictions made in shares, one per rank, and gathered:
        every rank returns the same metrics."""
        import torch.distributed as dist

        from ..metrics import evaluate

        examples = list(examples)
        mine = learner.predict(examples[self.rank::self.world])
        shares: list = [None] * self.world
        dist.all_gather_object(shares, mine)
        return evaluate(learner.task, examples, merge_shares(shares, len(examples)))


def _destroy_group() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# ---------------------------------------------------------------- launching the workers ourselves

def launch(learner, train: Sequence, eval: Sequence | None, weights: Sequence[float] | None = None) -> dict | None:
    """Train `learner` in worker processes when its options ask for it and return the history, with rank
    0's best model loaded into `learner`; None when this process should train itself (one worker, or
    already a rank of a group: torchrun, Ray Train, a spawned worker)."""
    cfg = learner.config
    workers, how = getattr(cfg, "workers", 1), getattr(cfg, "launcher", "auto")
    check_options(workers, how)
    if _in_group():
        return None
    if how == "ray" or (workers > 1 and how == "auto" and _ray_running()):
        return _launch_ray(learner, train, eval, weights, workers)
    if workers > 1:
        return _launch_spawn(learner, train, eval, weights, workers)
    return None


def _in_group() -> bool:
    try:
        import torch.distributed as dist
    except ImportError:
        return False
    if dist.is_available() and dist.is_initialized():
        return True
    return env_world()[0] > 1


def _ray_running() -> bool:
    try:
        import ray
    except ImportError:
        return False
    return ray.is_initialized()


def _job(learner, train, eval, weights, threads: int, remote: bool = False) -> dict:
    """What a worker needs to build the same learner and train it (pickled to each worker). `remote`: the
    workers may run on other machines, so a Hub model is named by its repository and resolved commit
    (each node fetches it into its own cache) rather than by this machine's cache folder."""
    from dataclasses import replace

    from ..progress import is_quiet

    config, model_path = learner.config, learner.model_path
    source = getattr(learner, "source", None)
    if remote and getattr(source, "repo_id", None) and getattr(source, "sha", None) and hasattr(config, "revision"):
        config, model_path = replace(config, revision=source.sha), source.repo_id
    return {"cls": type(learner), "task": learner.task, "config": config, "model_path": model_path,
            "train": list(train), "eval": list(eval) if eval else None,
            "weights": list(weights) if weights is not None else None, "threads": threads, "quiet": is_quiet()}


def _work(job: dict, rank: int) -> tuple[dict, bytes]:
    """In a worker whose process group is up: train; (history, the best weights as safetensors bytes)."""
    import torch
    from safetensors.torch import save

    from ..progress import set_quiet

    if job["threads"]:
        torch.set_num_threads(job["threads"])
    set_quiet(job["quiet"] or rank != 0)
    learner = job["cls"](job["task"], job["config"], model_path=job["model_path"])
    history = learner.fit(job["train"], job["eval"], job["weights"]) if job["weights"] is not None \
        else learner.fit(job["train"], job["eval"])
    # copies: tied weights become separate tensors, which safetensors accepts; load_state_dict fills both
    state = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in learner.model.state_dict().items()}
    return history, save(state)


def _adopt(learner, history: dict, weights: bytes, seconds: float) -> dict:
    """Rank 0's model and history into the calling learner."""
    from safetensors.torch import load

    learner.model = learner._load_model(learner.model_path)
    learner.model.load_state_dict(load(weights))
    learner.model.eval()
    learner.history = {**history, "seconds": round(seconds, 2)}   # wall time here, worker start-up included
    return learner.history


def _launch_spawn(learner, train, eval, weights, workers: int) -> dict:
    import time

    import torch
    import torch.multiprocessing as mp
    from torch.multiprocessing.spawn import ProcessException

    if learner.device == "cuda" and torch.cuda.device_count() < workers:
        raise S3Error(f"learner setting workers={workers} but this machine has {torch.cuda.device_count()} GPU(s); "
                      "use at most one worker per GPU (or launcher=ray on a cluster)")
    t0 = time.time()
    job = _job(learner, train, eval, weights, threads=max(1, torch.get_num_threads() // workers))
    with tempfile.TemporaryDirectory(prefix="s3synth-dp-") as tmp:
        try:
            mp.spawn(_spawn_worker, args=(workers, job, tmp), nprocs=workers, join=True)
        except ProcessException:
            errors = sorted(Path(tmp).glob("error-*.txt"))
            if errors:
                raise S3Error(errors[0].read_text(encoding="utf-8")) from None
            raise
        import json

        history = json.loads((Path(tmp) / "history.json").read_text(encoding="utf-8"))
        weights = (Path(tmp) / "model.safetensors").read_bytes()
    return _adopt(learner, history, weights, time.time() - t0)


def _spawn_worker(rank: int, world: int, job: dict, tmp: str) -> None:
    """One spawned worker: joins the group through a file in `tmp`, trains, rank 0 writes its result there."""
    import json
    import sys

    import torch
    import torch.distributed as dist

    from ..io import atomic_write_text

    cuda = job["config"].device == "cuda" or (job["config"].device == "auto" and torch.cuda.is_available())
    if cuda:
        torch.cuda.set_device(rank)
    dist.init_process_group("nccl" if cuda else "gloo", init_method=Path(tmp, "rendezvous").resolve().as_uri(),
                            rank=rank, world_size=world)
    try:
        history, weights = _work(job, rank)
    except S3Error as e:
        Path(tmp, f"error-{rank}.txt").write_text(str(e), encoding="utf-8")
        sys.exit(2)
    finally:
        dist.destroy_process_group()
    if rank == 0:
        Path(tmp, "model.safetensors").write_bytes(weights)
        atomic_write_text(Path(tmp, "history.json"), json.dumps(history))


def _launch_ray(learner, train, eval, weights, workers: int) -> dict:
    import time

    try:
        import ray
        from ray.train import RunConfig, ScalingConfig
        from ray.train.torch import TorchConfig, TorchTrainer
    except ImportError:
        raise S3Error("learner setting launcher=ray needs Ray Train: pip install 's3synth[ray]'") from None
    t0 = time.time()
    if not ray.is_initialized():
        # RAY_ADDRESS (auto, ray://HOST:PORT) joins a cluster; without it a local Ray is started
        ray.init(address=os.environ.get("RAY_ADDRESS") or "local", include_dashboard=False)
    gpus = ray.cluster_resources().get("GPU", 0)
    device = learner.config.device
    if device == "cuda" and gpus < workers:
        raise S3Error(f"learner settings device=cuda, workers={workers} but the Ray cluster has {gpus:g} GPU(s)")
    use_gpu = device == "cuda" or (device == "auto" and gpus >= workers)
    # threads: Ray sets OMP_NUM_THREADS per worker
    job_ref = ray.put(_job(learner, train, eval, weights, threads=0, remote=True))
    with tempfile.TemporaryDirectory(prefix="s3synth-ray-") as tmp:
        trainer = TorchTrainer(
            _ray_worker, train_loop_config={"job": job_ref},
            scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu),
            torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
            run_config=RunConfig(name="s3synth-learner", storage_path=os.environ.get(RAY_STORAGE_ENV) or tmp))
        result = trainer.fit()
    out = result.return_value
    if result.error is not None or out is None:
        raise result.error or S3Error("Ray Train returned no model from rank 0")
    if "error" in out:
        raise S3Error(out["error"])
    return _adopt(learner, out["history"], out["weights"], time.time() - t0)


def _ray_worker(config: dict):
    """Ray Train's train_loop_per_worker: the process group is up and the GPU (if any) chosen."""
    import ray
    import ray.train

    rank = ray.train.get_context().get_world_rank()
    try:
        history, weights = _work(ray.get(config["job"]), rank)
    except S3Error as e:
        return {"error": str(e)}
    return {"history": history, "weights": weights} if rank == 0 else None
