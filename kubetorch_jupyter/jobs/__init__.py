"""Notebook export: a notebook run as a job, by hand or on a schedule, every run kept.

- :mod:`.export`: ``kt export`` / ``%kt export``: check everything, then write the job
  and its schedule (nothing half-created on bad input); :mod:`.from_kernel` is the
  ``%kt export`` side (which notebook, unsaved edits, the kernel's compute).
- :mod:`.runner`: one run, executed by papermill (:mod:`.engine` adds the progress log),
  with its record and exit status.
- :mod:`.store`: where jobs and runs live (``$KT_STATE_DIR/jobs/<name>/``).
- :mod:`.source`: the notebook, its parameters and its compute metadata.
- :mod:`.schedule`: cron expressions checked by field, in words, next run, time zones.
- :mod:`.crontab`: the local scheduler: one marked line per job in the user's crontab.
- :mod:`.in_kernel`: what ``%%kt`` does inside a job (``KT_JOB_SPEC``, ``KT_JOB_COMPUTE``).

Nothing is imported here: the magics import :mod:`.in_kernel` alone, without the
scheduling libraries.
"""
