"""The agent <-> control-plane API: .proto files and the code generated from them (committed).

Regenerate with ``make proto``; ``tests/unit/test_proto_generated.py`` fails when the committed code
drifts from the .proto files.
"""
