"""Training helpers: a callback that simulates a job killed after a checkpoint."""


class Interrupted(RuntimeError):
    """Raised by :func:`stop_after` to simulate a job killed after an epoch's checkpoint."""


def stop_after(last_epoch: int):
    """A training callback that stops the run after epoch ``last_epoch`` (its checkpoint is written)."""

    def callback(run, epoch, history):
        if epoch >= last_epoch and epoch < run.epochs:
            raise Interrupted(f"stopped after epoch {epoch} as asked")

    return callback
