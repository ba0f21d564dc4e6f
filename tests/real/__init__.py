"""The real-engine tier: a real Docker engine, real OpenSSH servers and Debian base images on this machine.

`make real` (`python -m pytest tests/real`) runs it as root on a Debian machine prepared by
`.ci/install-real-tier.sh`; the fixtures are in `conftest.py`, the helpers in `procs`, `engine`, `images`,
`hosts` and `remote`. Everything listens on loopback or on unix sockets under one per-run directory.
"""
