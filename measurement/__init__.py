"""Measuring flexibility: power reconstructed from OCPI meter states, energy shifted per
demand-response activation, theoretical minimum power, non-responding chargers and the
erasable-power curve."""
