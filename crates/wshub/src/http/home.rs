//! The home page: a minijinja template (HTML auto-escaping on) rendered per request with
//! `host`, the request's `Host`. `{{ host }}` is the documented form; the Go original's
//! `{{.}}` and `{{$}}` are read as `{{ host }}`, so its templates keep working.

use minijinja::{AutoEscape, Environment, context};

/// A home page template that parsed.
#[derive(Debug)]
pub(crate) struct HomePage {
    env: Environment<'static>,
}

const NAME: &str = "home.html";

/// Why a home page template was refused: the line and what is wrong there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateError(pub String);

impl std::fmt::Display for TemplateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TemplateError {}

/// The Go template's ways of saying "the data" (here: the host), as minijinja reads them.
fn go_forms(text: &str) -> String {
    let mut text = text.to_owned();
    for form in ["{{.}}", "{{ . }}", "{{$}}", "{{ $ }}"] {
        text = text.replace(form, "{{ host }}");
    }
    text
}

impl HomePage {
    /// Parses `template`, or says on which line it does not.
    pub(crate) fn new(template: &str) -> Result<HomePage, TemplateError> {
        let mut env = Environment::new();
        env.set_auto_escape_callback(|_| AutoEscape::Html);
        env.add_template_owned(NAME, go_forms(template))
            .map_err(|error| {
                let line = error
                    .line()
                    .map_or(String::new(), |l| format!("line {l}: "));
                TemplateError(format!(
                    "{line}{}",
                    error
                        .detail()
                        .map_or_else(|| error.kind().to_string(), str::to_owned)
                ))
            })?;
        Ok(HomePage { env })
    }

    /// The page for a request whose `Host` is `host` (escaped for HTML by the template).
    pub(crate) fn render(&self, host: &str) -> Result<String, TemplateError> {
        self.env
            .get_template(NAME)
            .and_then(|template| template.render(context! { host }))
            .map_err(|error| TemplateError(error.to_string()))
    }
}

/// Checks a home page template the way the router will load it: `Err` names the line.
pub fn check_home_template(template: &str) -> Result<(), TemplateError> {
    HomePage::new(template).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_form_of_the_host_is_rendered_escaped() {
        let page = HomePage::new("{{host}} {{ host }} {{.}} {{$}}").unwrap();
        assert_eq!(
            page.render("a<b>").unwrap(),
            "a&lt;b&gt; a&lt;b&gt; a&lt;b&gt; a&lt;b&gt;"
        );
    }

    #[test]
    fn a_template_that_does_not_parse_names_its_line() {
        let error = HomePage::new("<p>\n{% if %}\n").unwrap_err();
        assert!(error.0.starts_with("line 2: "), "{error}");
    }
}
