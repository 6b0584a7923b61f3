"""MLflow tracking of ``segment fit``: parent run, one child per grid point, plots, pyfunc model.

Everything MLflow lives here; ``mlflow.enabled: false`` means none of it is imported.
"""
