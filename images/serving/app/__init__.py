"""Iris prediction server: FastAPI app serving the model exported to the shared models volume."""
