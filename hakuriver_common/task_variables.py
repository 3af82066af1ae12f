"""The variables HakuRiver sets in a task's environment, over the task's own: the Runner sets
these at start, the Host an array task's (``arrays``). A submission that sets one itself is
refused: its value would be replaced without a word."""

from __future__ import annotations

from hakuriver_common.arrays import ARRAY_ID_VAR, ARRAY_INDEX_VAR

TASK_ID_VAR = "HAKURIVER_TASK_ID"
CPUS_VAR = "HAKURIVER_CPUS"
GPU_IDS_VAR = "HAKURIVER_GPU_IDS"
# A host process's Runner (NAME@CLUSTER_ID): how it finds the process without its spool.
# Not HAKURIVER_RUNNER: that would be the config's runner section to a HakuRiver tool the
# process runs.
RUNNER_VAR = "HAKURIVER_TASK_RUNNER"
# Which GPUs the NVIDIA runtime gives a container: a node whose Docker runs it by default
# (DGX OS does) honours it in any container's variables, and CUDA images set it to "all".
NVIDIA_DEVICES_VAR = "NVIDIA_VISIBLE_DEVICES"
# Which GPUs CUDA shows the task (empty without GPUs: unset, it would show every GPU), and
# in what order, so that its numbers follow the node's ids (set with GPUs).
CUDA_DEVICES_VAR = "CUDA_VISIBLE_DEVICES"
CUDA_ORDER_VAR = "CUDA_DEVICE_ORDER"
RESERVED = frozenset(
    {
        TASK_ID_VAR,
        CPUS_VAR,
        GPU_IDS_VAR,
        RUNNER_VAR,
        ARRAY_ID_VAR,
        ARRAY_INDEX_VAR,
        NVIDIA_DEVICES_VAR,
        CUDA_DEVICES_VAR,
        CUDA_ORDER_VAR,
    }
)
