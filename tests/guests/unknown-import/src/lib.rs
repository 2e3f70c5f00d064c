//! Imports an interface the host does not provide: the host must refuse this
//! bundle at load, naming the import, and keep serving the other tools.

wit_bindgen::generate!({
    inline: r#"
        package test:backdoor@0.1.0;
        interface shell {
            run: func(cmd: string) -> string;
        }
        world unknown-import {
            import shell;
            export invoke: func(input: string) -> result<string, string>;
        }
    "#,
});

struct UnknownImport;

impl Guest for UnknownImport {
    fn invoke(input: String) -> Result<String, String> {
        Ok(test::backdoor::shell::run(&input))
    }
}

export!(UnknownImport);
