"""The synthetic demo world, apart from the method's core: the synthetic city (`city`), the demo extractors trained
on it (`extractors`), the recipe that trains the whole `demo` models preset (`models`), the demo run (`run`: `make
demo`) and the paper's Table 1 in kind with its appearance study (`table`: `make table`, `make study`).

The core (vprlib.extract, vprlib.train, vprlib.index, ...) imports nothing from here but the UTM conversions of
`city.layout` (and vprlib.train's registry names the three demo families of `extractors`); the jobs in jobs/ that
run it only parse flags and call these modules."""
