from tests.model.conftest import frame_model, sensor_model

__all__ = ["frame_model", "sensor_model"]
