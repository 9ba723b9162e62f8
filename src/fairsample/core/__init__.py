"""The bottom layer: errors, configuration, JSON-safe values, engine spec and hardware facts (imports no other
fairsample layer)."""
