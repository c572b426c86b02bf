"""The platform server (docs/architecture.md): REST API, WebSocket, DB, queue and scheduler, process
executor, monitor and the server's DHT node. `create_app()` builds the FastAPI app; the
services (`session_service`, `metrics_service`, `model_service`, `p2p_node`) are plain Python
callables the UI can use without HTTP."""
