from __future__ import annotations

from rest_framework import serializers

from .models import Job


class JobSerializer(serializers.ModelSerializer):
    worker_lost = serializers.BooleanField(
        read_only=True, help_text="Running, but the worker stopped writing its heartbeat"
    )
    waiting_for_queue = serializers.BooleanField(
        read_only=True, help_text="The queue was unreachable; the job starts when it is back"
    )
    state = serializers.SerializerMethodField(help_text="The job's state in words")

    class Meta:
        model = Job
        fields = [
            "id",
            "kind",
            "cohort",
            "status",
            "progress",
            "phrase",
            "error",
            "parameters",
            "result",
            "attempts",
            "workers_lost",
            "created_at",
            "started_at",
            "finished_at",
            "heartbeat_at",
            "worker_lost",
            "waiting_for_queue",
            "state",
        ]
        read_only_fields = fields

    def get_state(self, job: Job) -> str:
        if job.worker_lost:
            last = job.heartbeat_at or job.started_at
            return (
                f"The worker stopped responding at {last:%H:%M} UTC ({job.progress}%, "
                f"{job.phrase}); retry the job or wait for the queue to hand it to another worker."
            )
        if job.waiting_for_queue:
            return (
                "The job queue was unreachable when the job started; the job is saved and will "
                "start by itself when the queue is back."
            )
        return f"{job.get_status_display()}: {job.progress}% · {job.phrase}"
