"""nano: a procedural sprite world with known truth (`world`) and a probe that reads it back from videos (`probe`)."""
