package inventory_test

import (
	"errors"
	"strings"
	"testing"

	"attache.dev/attache/providers/kubernetes/inventory"
)

func TestDecode(t *testing.T) {
	objs, err := inventory.Decode([]byte(manifests("hello", image1)))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, o := range objs {
		got = append(got, o.GetAPIVersion()+"/"+o.GetKind()+" "+o.GetName())
	}
	want := "v1/ServiceAccount web,v1/ConfigMap web-config,v1/Service web,apps/v1/Deployment web," +
		"rbac.authorization.k8s.io/v1/Role reader,rbac.authorization.k8s.io/v1/RoleBinding reader"
	if strings.Join(got, ",") != want {
		t.Fatalf("decoded %q", got)
	}
	// Numbers are int64, as unstructured objects hold them.
	if r, ok := objs[3].Object["spec"].(map[string]any)["replicas"].(int64); !ok || r != 3 {
		t.Fatalf("replicas = %#v", objs[3].Object["spec"].(map[string]any)["replicas"])
	}
	// DeepCopy panics on types unstructured objects may not hold.
	for _, o := range objs {
		o.DeepCopy()
	}
}

func TestDecodeForms(t *testing.T) {
	tests := []struct {
		name, in string
		n        int
	}{
		{"empty", "", 0},
		{"only comments and separators", "# nothing\n---\n---\n# more\n", 0},
		{"leading separator", "---\n" + okConfigMap, 1},
		{"JSON", `{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"j"},"data":{"a":"b"}}`, 1},
		{"JSON and YAML documents", `{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"j"}}` + "\n---\n" + okConfigMap, 2},
		{"separator with a comment", okConfigMap + "--- # next\n" + strings.Replace(okConfigMap, "ok", "ok2", 1), 2},
		{"null document", "null\n---\n" + okConfigMap, 1},
		{"CRLF", strings.ReplaceAll(okConfigMap, "\n", "\r\n"), 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			objs, err := inventory.Decode([]byte(tc.in))
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if len(objs) != tc.n {
				t.Fatalf("%d objects, want %d", len(objs), tc.n)
			}
		})
	}
}

func TestDecodeErrors(t *testing.T) {
	tests := []struct {
		name, in string
		want     []string
	}{
		{"bad YAML", okConfigMap + "---\napiVersion: v1\nkind: [unclosed\n", []string{"document 2"}},
		{"bad indentation", okConfigMap + "---\n" + okConfigMap + "---\napiVersion: v1\n kind: ConfigMap\n", []string{"document 3"}},
		{"duplicate key", "apiVersion: v1\nkind: ConfigMap\nkind: Secret\nmetadata:\n  name: x\n", []string{"document 1", "kind"}},
		{"missing kind", okConfigMap + "---\napiVersion: v1\nmetadata:\n  name: x\n", []string{"document 2", "kind is missing"}},
		{"missing apiVersion", "kind: ConfigMap\nmetadata:\n  name: x\n", []string{"document 1", "apiVersion is missing"}},
		{"bad apiVersion", "apiVersion: a/b/c\nkind: ConfigMap\nmetadata:\n  name: x\n", []string{"document 1", `apiVersion "a/b/c"`}},
		{"missing name", okConfigMap + "---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  labels: {}\n", []string{"document 2", "(apps/v1/Deployment)", "metadata.name is missing"}},
		{"missing metadata", "apiVersion: v1\nkind: ConfigMap\n", []string{"document 1", "metadata is missing"}},
		{"name not a string", "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: 42\n", []string{"document 1", "metadata.name"}},
		{"name with a slash", "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a/b\n", []string{"document 1", `"a/b"`}},
		{"label not a string", "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n  labels:\n    tier: 3\n", []string{"document 1", "ConfigMap x", "metadata.labels[tier]"}},
		{"not an object", okConfigMap + "---\n- a\n- b\n", []string{"document 2", "not an object but a list"}},
		{"scalar", "hello\n", []string{"document 1", "not an object but a string"}},
		{"a List", "apiVersion: v1\nkind: List\nmetadata:\n  name: l\nitems: []\n", []string{"document 1", "lists are not supported"}},
		{"bad separator", okConfigMap + "--- !!map\n" + okConfigMap, []string{"document 2", "separator"}},
		{"alias bomb", "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n" + aliasBomb, []string{"document 1", "alias"}},
		{"too big", okConfigMap + "data:\n  big: " + strings.Repeat("x", inventory.MaxBytes), []string{"at most 1048576"}},
		{"too many", strings.Repeat("---\n"+okConfigMap, inventory.MaxObjects+1), []string{"document 501", "more than 500"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			objs, err := inventory.Decode([]byte(tc.in))
			if err == nil {
				t.Fatalf("Decode succeeded with %d objects", len(objs))
			}
			if !errors.Is(err, inventory.ErrInvalid) {
				t.Errorf("%v does not wrap ErrInvalid", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

// aliasBomb expands to 10^9 strings unless the YAML parser bounds aliases.
const aliasBomb = `a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
`

func FuzzDecode(f *testing.F) {
	f.Add([]byte(manifests("hello", image1)))
	f.Add([]byte(okConfigMap + "---\n" + okConfigMap))
	f.Add([]byte(`{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"j"},"data":{"n":1.5e300}}`))
	f.Add([]byte("a: &a [*a]\n"))
	f.Add([]byte("apiVersion: v1\nkind: List\nitems:\n- {}\n"))
	f.Add([]byte("---\n--- #\n...\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		objs, err := inventory.Decode(in)
		if err != nil {
			if !errors.Is(err, inventory.ErrInvalid) {
				t.Fatalf("error %v does not wrap ErrInvalid", err)
			}
			return
		}
		for _, o := range objs {
			// What Decode returns must be a valid unstructured object.
			o.DeepCopy()
			if o.GetName() == "" || o.GetKind() == "" || o.GetAPIVersion() == "" {
				t.Fatalf("decoded an object without name, kind or apiVersion: %v", o.Object)
			}
			if _, err := o.MarshalJSON(); err != nil {
				t.Fatalf("decoded object does not encode: %v", err)
			}
		}
	})
}
