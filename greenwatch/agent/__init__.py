"""Agent: samples a node's GPUs and host, maps GPU processes to jobs and builds batches.

Entry points: :class:`~greenwatch.agent.sampler.Sampler` (sampling logic) and
``greenwatch.agent.service.run_agent`` (the service that publishes to MQTT).
"""
