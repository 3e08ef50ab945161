package rbac

import "testing"

func TestObjects(t *testing.T) {
	objs, err := Objects()
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, o := range objs {
		got = append(got, o.GetKind()+"/"+o.GetName())
	}
	want := []string{
		"Namespace/" + Namespace, "ServiceAccount/" + ServiceAccount, "ClusterRole/" + ClusterRole,
		"ClusterRoleBinding/" + ClusterRole, "ClusterRole/" + TenantClusterRole,
		"ValidatingAdmissionPolicy/" + AdmissionPolicy, "ValidatingAdmissionPolicyBinding/" + AdmissionPolicy,
	}
	if len(got) != len(want) {
		t.Fatalf("objects %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("object %d is %s, want %s", i, got[i], want[i])
		}
	}
}
