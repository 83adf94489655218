"""One module per stage (or family of stages): resolve paths from params, call the pure stage function, track it in
MLflow. The CLI verbs, the Prefect flow and dvc.yaml reach them through the stage table in pipelines/dag.py."""
