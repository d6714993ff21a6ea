"""Runtime facts: device and precision selection, memory accounting, seeding."""
