"""The learner-side runner: ``python -m dlaas.runner JOB_DIR/runner.json``.

Started by a backend (the local one, or a Kubernetes pod) for one attempt of one run: it stages
the code and data, runs the user's command with the learner environment, uploads the results
and reports each state to the scheduler. Kept light (grpcio, protobuf and the standard library)
so that it starts fast.
"""
