package server

import "google.golang.org/genproto/googleapis/api/annotations"

// HasHTTPRule reports whether http_rules.yaml has a rule for the method
// ("tokenvault.v1.TokenVaultService.GetAccessToken").
func HasHTTPRule(selector string) bool {
	rules, err := httpRules()
	if err != nil {
		panic(err)
	}
	for _, r := range rules {
		if r.GetSelector() == selector {
			return true
		}
	}
	return false
}

// HTTPRoutes returns every route of http_rules.yaml as "METHOD /path".
func HTTPRoutes() []string {
	rules, err := httpRules()
	if err != nil {
		panic(err)
	}
	var out []string
	for _, r := range rules {
		for _, b := range append([]*annotations.HttpRule{r}, r.GetAdditionalBindings()...) {
			switch {
			case b.GetGet() != "":
				out = append(out, "GET "+b.GetGet())
			case b.GetPost() != "":
				out = append(out, "POST "+b.GetPost())
			case b.GetPut() != "":
				out = append(out, "PUT "+b.GetPut())
			case b.GetPatch() != "":
				out = append(out, "PATCH "+b.GetPatch())
			case b.GetDelete() != "":
				out = append(out, "DELETE "+b.GetDelete())
			}
		}
	}
	return out
}
