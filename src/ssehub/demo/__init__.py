"""The sample's application layer: a long task and an object countdown.

It depends only on the `Messenger` protocol, as the sample's application project
depended only on ``ISseUserMessagingService``.
"""

from ssehub.demo.tasks import Person, TaskResult, run_long_task, run_object_countdown

__all__ = ["Person", "TaskResult", "run_long_task", "run_object_countdown"]
