"""Fleet and network generator: Rotterdam-like networks and a day of realistic Dutch public-charging sessions."""
