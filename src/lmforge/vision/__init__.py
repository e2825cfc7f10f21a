"""The vision-language branch (Molmo): model, PixMo-style data, evaluation."""
