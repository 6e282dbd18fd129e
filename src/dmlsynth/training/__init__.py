"""Training one run (dataset x method x loss x seed).

- :mod:`~dmlsynth.training.build`: the run's parts (data, model, loss, method, optimizer) from its params;
- :mod:`~dmlsynth.training.loop`: the epochs, resuming and callbacks (:func:`train_run`);
- :mod:`~dmlsynth.training.checkpoint`: seeding, random-stream state and the per-epoch checkpoint;
- :mod:`~dmlsynth.training.outputs`: the files a finished run leaves.
"""
