"""The report layer: reads result files, never runs models.

    python -m harness.report.collect RESULTS_DIR     # point files -> results.parquet / results.csv
    python -m harness.report.plot RESULTS_DIR        # figures/ and report.md
    python -m harness.report.plot_history RESULTS_DIR --checkpoints CKPT_DIR

* ``collect``  - merge the per-point row files into one table;
* ``series``   - what a curve is and how it is named (shared by everything below);
* ``fit``      - scaling exponents and crossover lengths, each with its uncertainty;
* ``plot``     - the figures an experiment declares, then ``report.md``;
  ``plot_distance`` / ``plot_budget`` / ``plot_history`` - the accuracy-vs-distance,
  metric-vs-budget and training-loss figures; ``plot_marks`` - failed and unfinished points;
* ``markdown`` - ``report.md``: the tables behind the figures.

The arrows point into ``harness.results`` (loading and validating rows, the one writer) and
``harness.conformance.plan`` (what the suite checked); nothing here imports an app.
"""
