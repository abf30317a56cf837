package main

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

// sizeUnits are the units a size may carry. G, M, K and T are binary, as
// QEMU and libvirt read them; decimal GB/MB are refused rather than guessed.
var sizeUnits = map[string]uint64{
	"": 1, "b": 1,
	"k": 1 << 10, "kib": 1 << 10,
	"m": 1 << 20, "mib": 1 << 20,
	"g": 1 << 30, "gib": 1 << 30,
	"t": 1 << 40, "tib": 1 << 40,
}

// parseSize reads a size such as 4GiB, 512M, 1.5G or 1073741824 (bytes).
func parseSize(s string) (uint64, error) {
	t := strings.TrimSpace(s)
	i := strings.IndexFunc(t, func(r rune) bool { return !(r >= '0' && r <= '9' || r == '.') })
	if i < 0 {
		i = len(t)
	}
	num, unit := t[:i], strings.ToLower(strings.TrimSpace(t[i:]))
	if num == "" {
		return 0, fmt.Errorf("%q: want a number with an optional unit, such as 4GiB, 512MiB, 20G or 1073741824 (bytes)", s)
	}
	mult, ok := sizeUnits[unit]
	if !ok {
		return 0, fmt.Errorf("%q: unknown unit %q; use B, KiB, MiB, GiB or TiB (K, M, G, T mean the same)", s, strings.TrimSpace(t[i:]))
	}
	if !strings.Contains(num, ".") {
		n, err := strconv.ParseUint(num, 10, 64)
		if err != nil || n > math.MaxUint64/mult {
			return 0, fmt.Errorf("%q: too large", s)
		}
		return n * mult, nil
	}
	f, err := strconv.ParseFloat(num, 64)
	if err != nil {
		return 0, fmt.Errorf("%q: %q is not a number", s, num)
	}
	b := f * float64(mult)
	if b >= math.MaxUint64 {
		return 0, fmt.Errorf("%q: too large", s)
	}
	if b != math.Trunc(b) {
		return 0, fmt.Errorf("%q: not a whole number of bytes", s)
	}
	return uint64(b), nil
}

// formatSize writes n in the largest binary unit that divides it.
func formatSize(n uint64) string {
	for _, u := range []struct {
		name string
		size uint64
	}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if n >= u.size && n%u.size == 0 {
			return strconv.FormatUint(n/u.size, 10) + " " + u.name
		}
	}
	return strconv.FormatUint(n, 10) + " B"
}

// sizeFlag is a size flag: a bad value fails at parsing, naming the flag.
type sizeFlag struct {
	n   uint64
	set bool
}

func (f *sizeFlag) String() string {
	if f.n == 0 {
		return "0"
	}
	return strings.ReplaceAll(formatSize(f.n), " ", "")
}

func (f *sizeFlag) Set(s string) error {
	n, err := parseSize(s)
	if err != nil {
		return err
	}
	f.n, f.set = n, true
	return nil
}

func (f *sizeFlag) Type() string { return "size" }
