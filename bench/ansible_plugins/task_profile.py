"""An Ansible callback for bench/fleet.py: where a playbook's time goes, per task.

ansible-core ships no timing callback (``profile_tasks`` is in the ansible.posix collection, which the
dev venv does not install), so the benchmark brings this one. Enabled with
``ANSIBLE_CALLBACK_PLUGINS=bench/ansible_plugins ANSIBLE_CALLBACKS_ENABLED=task_profile``; it writes
``VMAGENT_TASK_PROFILE`` (a JSON file) at the end of the run: for every task in order, its wall time
(from its start to the start of the next task: with the linear strategy every host finishes a task
before the next starts) and the sum and maximum of its per-host times.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from ansible.plugins.callback import CallbackBase


class CallbackModule(CallbackBase):  # type: ignore[misc]
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "task_profile"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self) -> None:
        super().__init__()
        self._tasks: list[dict[str, Any]] = []
        self._current: dict[str, Any] | None = None
        self._host_start: dict[tuple[str, str], float] = {}
        self._play = ""

    def _close_current(self) -> None:
        if self._current is not None:
            self._current["wall_s"] = round(time.monotonic() - self._current.pop("_t0"), 3)
            self._tasks.append(self._current)
            self._current = None

    def v2_playbook_on_play_start(self, play: Any) -> None:
        self._close_current()
        self._play = play.get_name()

    def v2_playbook_on_task_start(self, task: Any, is_conditional: bool) -> None:
        self._close_current()
        self._current = {
            "play": self._play,
            "task": task.get_name(),
            "_t0": time.monotonic(),
            "hosts": 0,
            "host_sum_s": 0.0,
            "host_max_s": 0.0,
        }

    def v2_playbook_on_handler_task_start(self, task: Any) -> None:
        self.v2_playbook_on_task_start(task, False)

    def v2_runner_on_start(self, host: Any, task: Any) -> None:
        self._host_start[(host.get_name(), task._uuid)] = time.monotonic()

    def _host_done(self, result: Any, skipped: bool = False) -> None:
        t0 = self._host_start.pop((result._host.get_name(), result._task._uuid), None)
        if t0 is None or self._current is None:
            return
        took = time.monotonic() - t0
        if not skipped:
            self._current["hosts"] += 1
        self._current["host_sum_s"] = round(self._current["host_sum_s"] + took, 3)
        self._current["host_max_s"] = round(max(self._current["host_max_s"], took), 3)

    def v2_runner_on_ok(self, result: Any) -> None:
        self._host_done(result)

    def v2_runner_on_failed(self, result: Any, ignore_errors: bool = False) -> None:
        self._host_done(result)

    def v2_runner_on_skipped(self, result: Any) -> None:
        self._host_done(result, skipped=True)

    def v2_runner_on_unreachable(self, result: Any) -> None:
        self._host_done(result)

    def v2_playbook_on_stats(self, stats: Any) -> None:
        self._close_current()
        path = os.environ.get("VMAGENT_TASK_PROFILE")
        if path:
            with open(path, "w") as f:
                json.dump(self._tasks, f, indent=1)
