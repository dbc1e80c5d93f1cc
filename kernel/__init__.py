"""Thaw's kernel: the clock (the one module that reads real time), the error roots and the shared
vocabulary. Every package may import it; it imports nothing of Thaw's."""
