"""The MLflow server's PostgreSQL backend store (config mlflowBackendUri) needs a driver in the image."""

import pytest
import sqlalchemy
from sqlalchemy.exc import OperationalError


def test_postgresql_uri_resolves_to_an_installed_driver():
    # SQLAlchemy 2.1's postgresql:// dialect imports psycopg (3); a refused connection (not a
    # missing module) shows the driver is there. Port 1 on loopback: nothing listens, nothing leaves the host.
    engine = sqlalchemy.create_engine("postgresql://mlflow:pw@127.0.0.1:1/mlflow", connect_args={"connect_timeout": 5})
    assert engine.dialect.driver == "psycopg"
    with pytest.raises(OperationalError, match="(?i)connection refused|could not connect"):
        with engine.connect():
            pass
