"""Unattended jobs for fleets: a machine booted (from the ISO's menu or over PXE) with
`rescue.*` kernel parameters restores or captures by itself and says how it went in one line.
order.py reads and checks the parameters, run.py carries them out through the engine,
finish.py powers off, reboots or waits."""
