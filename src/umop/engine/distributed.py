"""The engine's name for :mod:`umop.distributed` (kept so that ``umop.engine.distributed`` imports work)."""

from ..distributed import (all_gather_objects, all_reduce_sum, barrier, cleanup_distributed, get_rank,
                           get_world_size, init_distributed, is_distributed, is_main_process, mean_over_processes)

__all__ = ["init_distributed", "is_distributed", "get_rank", "get_world_size", "is_main_process",
           "all_reduce_sum", "mean_over_processes", "all_gather_objects", "barrier", "cleanup_distributed"]
