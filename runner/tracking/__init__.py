"""The MLflow ring: the only place that imports mlflow. The Tune driver is MLflow's only writer.

connection   which store; reach it fast; the spec's experiment
queue        the buffered, ordered write queue
tracker      parent/child runs, metrics, artifacts (the writer)
provenance   spec digest, git commit, versions, Ray job id
queries      read back: latest invocation, results rows, reconcile
registry     register the best in-budget trial; load models back
"""
