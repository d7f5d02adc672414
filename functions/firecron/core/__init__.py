"""Pure domain code: models, trigger math, run state machine, tick planning. No I/O."""
