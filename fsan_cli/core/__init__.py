"""The small core every stage uses: settings, checkpoints, text, errors, output, atomic writes, device, memory."""
