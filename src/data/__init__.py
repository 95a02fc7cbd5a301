"""Engine data tables (GPUs, scale templates), installed as `archsmith.data`."""
