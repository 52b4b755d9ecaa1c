"""Local lm-eval tasks that need no hub, built from the held-out text of a superpose data directory
(`cloze`: superpose_cloze), and `jsonl_dataset`, the loader their yaml files (and yours) name as
`custom_dataset: !function superpose.tasks.jsonl_dataset`."""

from .cloze import LOCAL_TASKS, build_cloze, build_task, jsonl_dataset

__all__ = ["LOCAL_TASKS", "build_cloze", "build_task", "jsonl_dataset"]
