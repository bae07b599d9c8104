//! `rpcplugin tf schema`: a Terraform provider's schema, as `terraform providers schema -json`
//! prints it, through rpcplugin-terraform.

use std::sync::{Arc, Mutex};

use rpcplugin_terraform::Provider;

use crate::exit;
use crate::options::Options;

/// `registry.terraform.io/hashicorp/TYPE` from `terraform-provider-TYPE[_vX.Y.Z]`.
fn default_address(program: &str) -> Option<String> {
    let file = std::path::Path::new(program).file_name()?.to_str()?;
    let name = file.strip_prefix("terraform-provider-")?;
    let name = name.split("_v").next().filter(|n| !n.is_empty())?;
    Some(format!("registry.terraform.io/hashicorp/{name}"))
}

pub fn schema(options: &Options, address: Option<&str>) -> u8 {
    let program = options.program.as_deref().unwrap_or_default();
    let Some(address) = address
        .map(str::to_owned)
        .or_else(|| default_address(program))
    else {
        eprintln!(
            "rpcplugin: cannot tell the provider's address from {program:?} (not named \
             terraform-provider-TYPE); give it with --address, e.g. registry.terraform.io/NAMESPACE/TYPE"
        );
        return exit::USAGE;
    };
    let logs = Arc::new(Mutex::new(Vec::new()));
    let client = match options.start(&logs) {
        Ok(client) => client,
        Err(code) => return code,
    };
    let provider = match Provider::from_plugin(client) {
        Ok(provider) => provider,
        Err(e) => {
            eprintln!("rpcplugin: {e}");
            return exit::PLUGIN;
        }
    };
    println!("{}", provider.schema().to_schema_json(&address));
    provider.close();
    exit::OK
}
