"""The inference layer, arrays only and no HTTP: the onnxruntime session, the scheduler
(queue, batching, deadlines), the runner that ties them to one model's metrics, the
codec shared by every task's decoding, and the service's reading of a model's card."""
