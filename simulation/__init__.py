"""Fleet and network generator: Rotterdam-like networks and a day of realistic Dutch
public-charging sessions, plus small random networks for property tests."""
