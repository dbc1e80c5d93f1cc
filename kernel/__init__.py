"""Thaw's kernel: the clock (the one module that reads real time), the error roots, the shared
vocabulary (:mod:`.vocab`) and the one config-error formatter (:mod:`.config_errors`). Every
package may import it; it imports nothing of Thaw's."""
