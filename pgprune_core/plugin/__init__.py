"""How plugins are found and what they may register: the hook specifications and the
``hookimpl`` marker (``hookspecs``), the pluggy manager with the built-ins and the
``pgprune`` entry points (``manager``) and the typed tables of registered classes
(``registry``).
"""
