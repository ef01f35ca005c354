"""Feature tracking through fine-tuning and merging: TopK SAEs, cross-model matching, SLERP merges."""

from tunetrace.features.merge import lerp, merge_state_dicts, slerp

__all__ = ["lerp", "slerp", "merge_state_dicts"]
