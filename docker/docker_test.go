package docker

import "testing"

func TestWorkload(t *testing.T) {
	for _, tc := range []struct {
		c    Container
		want string
	}{
		{Container{Name: "web", Service: "shop_web", ComposeService: "web"}, "shop_web"},
		{Container{Name: "shop-web-1", ComposeService: "web"}, "web"},
		{Container{Name: "adhoc"}, "adhoc"},
	} {
		if got := tc.c.Workload(); got != tc.want {
			t.Errorf("%+v: workload %q, want %q", tc.c, got, tc.want)
		}
	}
}
