"""The HTTP service over a Predictor: FastAPI app, hostile-input limits, micro-batching, the web page."""

from imgcls.serve.app import MicroBatcher, ServeLimits, create_app, serve, sniff_image_type

__all__ = ["MicroBatcher", "ServeLimits", "create_app", "serve", "sniff_image_type"]
