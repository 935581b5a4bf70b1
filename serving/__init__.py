"""The model server and vLLM gateway (`flywheel serve`, DESIGN.md section 14): where production logs are
born and where a promotion or rollback becomes what users get.

    app        the HTTP API (FastAPI): generation, feedback, health, metrics, admin routes
    server     runs the app on uvicorn until SIGTERM (graceful: requests finish, logs are flushed)
    process    a server as a child process: a free port, waiting for /readyz (live traffic, tests)
    router     which model answers a request; leases that let an old adapter drain before unloading
    follower   follows the registry's champion/canary aliases and swaps adapters live
    backends   the local base + adapters (peft) or a vLLM server upstream
    batching   dynamic batching on the local backend: concurrent requests share a generate call
    capture    one LogRecord per answered request, written off the request path; late feedback
    metrics    Prometheus metrics; security: admin token policy and body-size limit
    schemas    request bodies; notify: the reload call promote/rollback make to a running server

Imports point down: flows -> serving -> tasks.
"""
