//! The built-in password-reset and invitation emails, text and HTML.

use crate::notify::template::Builtin;

/// "Reset your password": the link, and how long it stays valid.
pub const RESET: Builtin = Builtin {
    subject: "Reset your password",
    text: "Hello {{name}},\n\n\
           Someone, probably you, asked to reset the password of the account {{login}}.\n\
           To choose a new password, open this link:\n\n\
           {{link}}\n\n\
           The link works once and is valid for {{validity}}, until {{expires}}.\n\
           If you did not ask for this, ignore this email: your password does not change.\n",
    html: "<p>Hello {{name}},</p>\
           <p>Someone, probably you, asked to reset the password of the account <b>{{login}}</b>. \
           To choose a new password, open this link:</p>\
           <p><a href=\"{{link}}\">Reset your password</a></p>\
           <p>The link works once and is valid for {{validity}}, until {{expires}}.</p>\
           <p>If you did not ask for this, ignore this email: your password does not change.</p>",
};

/// The invitation: what it is for, the link, when it expires.
pub const INVITATION: Builtin = Builtin {
    subject: "You are invited to join {{organisation}}",
    text: "Hello {{name}},\n\n\
           You are invited to join the organisation {{organisation}} as {{login}}.\n\
           To accept the invitation and set up your account, open this link:\n\n\
           {{link}}\n\n\
           The invitation works once and expires in {{validity}}, on {{expires}}.\n\
           If your link has expired, contact your administrator for a new invitation.\n",
    html: "<p>Hello {{name}},</p>\
           <p>You are invited to join the organisation <b>{{organisation}}</b> as <b>{{login}}</b>. \
           To accept the invitation and set up your account, open this link:</p>\
           <p><a href=\"{{link}}\">Accept the invitation</a></p>\
           <p>The invitation works once and expires in {{validity}}, on {{expires}}.</p>\
           <p>If your link has expired, contact your administrator for a new invitation.</p>",
};
