package console

import (
	"net/url"
	"strconv"
	"strings"
	"testing"
)

// The Create Cluster form's parser takes any form: it never panics, names
// the field of every problem, and what it accepts reads back the same.
func FuzzClusterForm(f *testing.F) {
	f.Add("name=web&masters=1&workers=2&vcpus=2&memory_mib=2048&disk_gib=20")
	f.Add("name=web&masters=0&workers=0&vcpus=0&memory_mib=0&disk_gib=0&base_image=x")
	f.Add("name=&masters=-1&workers=1e3&vcpus=0x10&memory_mib=99999999999&disk_gib=%20")
	f.Add("name=a&masters=65535&workers=65536&vcpus=1&memory_mib=4294967295&disk_gib=4294967296")
	f.Fuzz(func(t *testing.T, query string) {
		v, err := url.ParseQuery(query)
		if err != nil {
			return
		}
		form := clusterFormFrom(v)
		spec, problems := form.spec()
		fields := []string{"name", "masters", "workers", "vcpus", "memory_mib", "disk_gib"}
		for _, p := range problems {
			field, _, _ := strings.Cut(p, ":")
			if !contains(fields, field) {
				t.Errorf("problem %q names no field of the form", p)
			}
		}
		if len(problems) > 0 {
			return
		}
		if len(spec.Pools) != 2 || spec.Name != form.Name || spec.BaseImage != form.BaseImage {
			t.Fatalf("form %+v gave spec %+v", form, spec)
		}
		m, w := spec.Pools[0], spec.Pools[1]
		if m.VCPUs != w.VCPUs || m.MemoryBytes != w.MemoryBytes || m.DiskBytes != w.DiskBytes ||
			m.MemoryBytes%(1<<20) != 0 || m.DiskBytes%(1<<30) != 0 {
			t.Fatalf("pools differ or are not whole units: %+v", spec.Pools)
		}
		again := clusterForm{Name: spec.Name, BaseImage: spec.BaseImage, Masters: strconv.Itoa(m.Count), Workers: strconv.Itoa(w.Count),
			VCPUs: strconv.Itoa(m.VCPUs), MemoryMiB: strconv.FormatUint(m.MemoryBytes>>20, 10), DiskGiB: strconv.FormatUint(m.DiskBytes>>30, 10)}
		spec2, problems2 := again.spec()
		if len(problems2) > 0 || spec2.Name != spec.Name || spec2.Pools[0] != m || spec2.Pools[1] != w {
			t.Fatalf("spec %+v read back as %+v (%v)", spec, spec2, problems2)
		}
	})
}

func contains(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}

// localNext answers any next= with a path of the console: never another
// host, scheme or a way out of /console/, and the same again when asked
// again.
func FuzzLocalNext(f *testing.F) {
	for _, s := range []string{"/console/", "/console/remediation?result=failed", "//evil", "/console/../x", "/console/%2e%2e/x",
		"https://e/console/", "/console/\\x", "/console/a?b=//c#d", "/console//x", "/console/%2F%2Fevil"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, next string) {
		got := localNext(next)
		if got == "/console/" {
			return
		}
		u, err := url.Parse(got)
		if err != nil || u.Scheme != "" || u.Host != "" || u.User != nil || !strings.HasPrefix(got, "/console/") ||
			strings.HasPrefix(got, "//") || strings.ContainsAny(got, "\\\r\n\t ") || strings.Contains(u.Path, "/../") ||
			strings.Contains(u.Path, "//") {
			t.Fatalf("localNext(%q) = %q: not a plain path of the console", next, got)
		}
		if again := localNext(got); again != got {
			t.Fatalf("localNext(%q) = %q, but localNext of that = %q", next, got, again)
		}
	})
}
