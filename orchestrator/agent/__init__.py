"""The engine's side of a host agent: the port (port.py), the protocol (protocol.py), and the port over HTTP.

rpc.py is the JSON-RPC-over-HTTP transport, http_agent.py the port on top of
it. Nothing here imports `orchestrator.testing`: the engine does not depend on
its test doubles.
"""
