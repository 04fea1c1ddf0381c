"""The command lines, installed as console scripts (pyproject): ``lsnet-train`` (``train``),
``lsnet-convert`` (``convert``), ``lsnet-eval`` (``evaluate``), ``lsnet-predict`` (``predict``),
``lsnet-export`` (``export``, serving formats) and ``lsnet-export-weights`` (``export_weights``,
a training run's checkpoint -> weights). Each module's ``main(argv)`` returns the exit status."""
